"""Make moto refuse what DynamoDB refuses: item size, key sizes, number range and precision, nesting.

moto 5 enforces only part of DynamoDB's limits (key sizes on PutItem; an approximate item size
counted on top-level attributes only) and none of the number or nesting rules, so code that
works on moto could fail on AWS. Installed by the tests' moto fixtures
(localcloud.template.create_in_moto, tests/conftest.py) and by the local cloud
(localcloud.aws._install_patches): one check for both. The rules and AWS's messages live in
engage.dynamodb_limits.

What each call answers, as AWS does (ValidationException unless said otherwise):
- PutItem: the item is checked before anything happens (before its condition).
- UpdateItem: the resulting item is checked; when it is refused the item is put back as it
  was and no stream record is left.
- BatchWriteItem: every PutRequest is checked first; one bad item refuses the whole call and
  nothing is written. So do more than 25 requests (per table or in all) and two requests on one
  item (moto compared whole items: two puts of one key with other attributes, or a put and a
  delete of it, were both applied).
- Empty string or binary key values, and key values over the key size limits, in an item (AWS's
  message, not moto's) or a Key (UpdateItem, DeleteItem, a batch's DeleteRequest,
  a transaction's Update/Delete/ConditionCheck) are refused as AWS refuses them in an item (moto
  checked items only: UpdateItem created an item with an empty sort key). Checked on the
  request, not in the backend, so a state dir written before keeps replaying.
- TransactGetItems takes up to 100 items, as AWS has since 2022 (moto refused more than 25).
- TransactWriteItems: a Put is checked up front (ValidationException for the whole call); an
  Update whose result is refused cancels the transaction (TransactionCanceledException with
  a `ValidationError` reason, AWS's message), nothing written. The items it writes may total at
  most 4 MB (each counted as the larger of its size before and after the write): past that the
  whole call is a ValidationException and nothing is written (moto has no such limit).
- A write's condition and the write are one step (`one_at_a_time`): moto checked and stored apart, so two
  threads' conditional writes of one item could both succeed.
"""
from __future__ import annotations

import copy
import functools
import json
import threading

from engage import dynamodb_limits as limits
from localcloud.moto_fixes import STREAM_LOCK

# The local cloud's transactions and stream appends take STREAM_LOCK (localcloud.moto_fixes): one re-entrant lock
# for every write, so no two locks are ever taken in opposite orders.
WRITE_LOCK = STREAM_LOCK

_state = threading.local()
_installed = False


def one_at_a_time(write):
    """`write` under WRITE_LOCK: DynamoDB applies a write's condition and the write as one step, moto in two
    (it reads the item, checks, then stores) with no lock, on many request threads (the local cloud) or test
    threads. Two conditional writes of one item could both pass their condition: two sends racing for the
    last frequency-cap slot both sent, now and then, under load."""
    @functools.wraps(write)
    def locked(*args, **kwargs):
        with WRITE_LOCK:
            return write(*args, **kwargs)
    return locked


class ValidationError(Exception):
    """Raised inside a transaction: moto records `type(error).__name__` as the cancellation code,
    which is DynamoDB's `ValidationError`."""


def install() -> None:
    """Patch moto once per process (its backends are process-global). Call after any other patch
    of StreamShard.add, so a refused update's stream record is never seen."""
    global _installed
    if _installed:
        return
    from moto.dynamodb import responses as moto_responses
    from moto.dynamodb.exceptions import MockValidationException
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.dynamo_type import LimitedSizeDict
    from moto.dynamodb.models.table import StreamShard
    from moto.dynamodb.responses import DynamoHandler

    # moto's own size check counts top-level attributes with its own formula (and re-sums the
    # item on every attribute set); the check below is DynamoDB's, so that one is retired.
    LimitedSizeDict.__setitem__ = dict.__setitem__

    original_put = DynamoDBBackend.put_item
    original_update = DynamoDBBackend.update_item
    original_transact = DynamoDBBackend.transact_write_items
    original_batch = DynamoHandler.batch_write_item
    original_put_request = DynamoHandler.put_item
    original_update_request = DynamoHandler.update_item
    original_delete_request = DynamoHandler.delete_item
    original_transact_request = DynamoHandler.transact_write_items
    original_add = StreamShard.add

    def refuse(message: str, *, in_transaction: bool = False) -> Exception:
        return ValidationError(message) if in_transaction else MockValidationException(message)

    def put_item(self, table_name, item_attrs, *args, **kwargs):
        table = self.get_table(table_name)
        problem = put_problem(table, item_attrs)
        if problem:
            raise MockValidationException(problem)
        return original_put(self, table_name, item_attrs, *args, **kwargs)

    def update_item(self, table_name, key, *args, **kwargs):
        table = self.get_table(table_name)
        problem = limits.wire_key_problem(key, table.hash_key_attr, table.range_key_attr)
        if problem:
            raise MockValidationException(problem)
        hash_value, range_value = self.get_keys_value(table, key)
        # moto copies the item for the stream record anyway: copy it here only without a stream
        before = copy.deepcopy(table.get_item(hash_value, range_value)) if table.stream_shard is None else None
        outer = getattr(_state, "deferred", None)
        _state.deferred = deferred = []  # this update's stream records, held until the result passes
        try:
            item = original_update(self, table_name, key, *args, **kwargs)
        except Exception:
            _state.deferred = outer
            raise
        _state.deferred = outer
        attributes = {name: _wire(value) for name, value in item.attrs.items()}
        problem = _item_problem(attributes, limits.UPDATE_TOO_LARGE)
        if problem:
            if table.stream_shard is not None:
                before = deferred[0][1] if deferred else None  # the stream record's old image
            _put_back(table, hash_value, range_value, before)
            raise refuse(problem, in_transaction=outer is not None)
        sizes = getattr(_state, "transaction_sizes", None)
        if outer is not None and sizes is not None:  # in a transaction: its items' sizes, this one's result too
            identity = _identity(table_name, key)
            sizes[identity] = max(sizes.get(identity, 0), limits.wire_item_size(attributes))
            if sum(sizes.values()) > limits.MAX_TRANSACTION_BYTES:
                raise MockValidationException(limits.TRANSACTION_TOO_LARGE)  # moto rolls the transaction back
        for shard, old, new in deferred:
            if outer is not None:
                outer.append((shard, old, new))  # a transaction publishes when it commits
            else:
                StreamShard.add(shard, old, new)
        return item

    def transact_write_items(self, transact_items):
        for entry in transact_items:
            operation, request = next(iter(entry.items()))
            if operation == "Put" and request.get("TableName") in self.tables:
                problem = put_problem(self.get_table(request["TableName"]), request.get("Item") or {})
                if problem:
                    raise MockValidationException(problem)
        _state.transaction_sizes = sizes = transaction_sizes(self, transact_items)
        if sum(sizes.values()) > limits.MAX_TRANSACTION_BYTES:
            _state.transaction_sizes = None
            raise MockValidationException(limits.TRANSACTION_TOO_LARGE)
        _state.deferred = deferred = []
        try:
            result = original_transact(self, transact_items)
        finally:
            _state.deferred = None
            _state.transaction_sizes = None
        for shard, old, new in deferred:
            StreamShard.add(shard, old, new)
        return result

    def batch_write_item(self):
        problem = batch_problem(self.dynamodb_backend, self.body.get("RequestItems", {}))
        if problem:
            raise MockValidationException(problem)
        return original_batch(self)

    def checking_key(original, field="Key"):
        def handler(self):
            problem = _key_problem(self.dynamodb_backend, self.body.get("TableName"), self.body.get(field))
            if problem:
                raise MockValidationException(problem)
            return original(self)
        return handler

    def transact_write_request(self):
        for entry in self.body.get("TransactItems") or []:
            for operation, request in entry.items():
                key = request.get("Item") if operation == "Put" else request.get("Key")
                if problem := _key_problem(self.dynamodb_backend, request.get("TableName"), key):
                    raise MockValidationException(problem)  # up front, as AWS: not a cancellation reason
        return original_transact_request(self)

    def add(self, old, new):
        deferred = getattr(_state, "deferred", None)
        if deferred is not None:
            deferred.append((self, old, new))
            return None
        return original_add(self, old, new)

    DynamoDBBackend.put_item = one_at_a_time(put_item)
    DynamoDBBackend.update_item = one_at_a_time(update_item)
    DynamoDBBackend.delete_item = one_at_a_time(DynamoDBBackend.delete_item)
    DynamoDBBackend.transact_write_items = one_at_a_time(transact_write_items)
    DynamoHandler.batch_write_item = batch_write_item
    DynamoHandler.put_item = checking_key(original_put_request, "Item")  # AWS's wording, not moto's
    DynamoHandler.update_item = checking_key(original_update_request)
    DynamoHandler.delete_item = checking_key(original_delete_request)
    DynamoHandler.transact_write_items = transact_write_request
    moto_responses.TRANSACTION_MAX_ITEMS = 100  # TransactGetItems' limit (moto's is AWS's before 2022)
    StreamShard.add = add
    _installed = True


def put_problem(table, item: dict) -> str | None:
    """AWS's message if DynamoDB would refuse to store `item` (wire form) in `table`, else None."""
    problem = limits.wire_key_problem(item, table.hash_key_attr, table.range_key_attr)
    return problem or _item_problem(item, limits.ITEM_TOO_LARGE)


def transaction_sizes(backend, transact_items: list) -> dict[tuple[str, str], int]:
    """(table, key) -> size of each item a TransactWriteItems names, as known before it runs: a Put's new
    item or the item as stored, whichever is larger (an Update's result is added when it is applied)."""
    sizes: dict[tuple[str, str], int] = {}
    for entry in transact_items:
        operation, request = next(iter(entry.items()))
        table_name = request.get("TableName")
        if table_name not in backend.tables:
            continue  # moto answers a missing table itself
        table = backend.tables[table_name]
        item = request.get("Item") if operation == "Put" else None
        source = item if item is not None else request.get("Key") or {}
        key = {name: source[name] for name in (table.hash_key_attr, table.range_key_attr) if name and name in source}
        try:
            stored = backend.get_item(table_name, key)
        except Exception:  # noqa: BLE001 - a malformed key: moto's own checks answer it
            stored = None
        before = limits.wire_item_size({n: _wire(v) for n, v in stored.attrs.items()}) if stored else 0
        sizes[_identity(table_name, key)] = max(before, limits.wire_item_size(item) if item else 0)
    return sizes


def _identity(table_name: str, key: dict) -> tuple[str, str]:
    return table_name, json.dumps(key, sort_keys=True)


def batch_problem(backend, requests_by_table: dict) -> str | None:
    """AWS's message if DynamoDB would refuse this BatchWriteItem as a whole, else None."""
    counts = {name: len(requests) for name, requests in requests_by_table.items()}
    too_many = next((name for name, count in counts.items() if count > limits.MAX_BATCH_WRITE), None)
    if too_many is not None:
        return limits.BATCH_WRITE_TOO_MANY.format(table=too_many)
    if sum(counts.values()) > limits.MAX_BATCH_WRITE:
        return limits.BATCH_WRITE_TOO_MANY_IN_ALL
    seen = set()
    for table_name, requests in requests_by_table.items():
        table = backend.get_table(table_name)
        names = [name for name in (table.hash_key_attr, table.range_key_attr) if name]
        for request in requests:
            item = (request.get("PutRequest") or {}).get("Item")
            key = item if item is not None else (request.get("DeleteRequest") or {}).get("Key") or {}
            problem = (limits.wire_empty_key_problem(key, table.hash_key_attr, table.range_key_attr)
                       or limits.wire_key_problem(key, table.hash_key_attr, table.range_key_attr))
            if problem or (item and (problem := put_problem(table, item))):
                return problem
            identity = (table.name, json.dumps([key.get(name) for name in names], sort_keys=True))
            if identity in seen:
                return limits.BATCH_WRITE_DUPLICATES
            seen.add(identity)
    return None


def _key_problem(backend, table_name, key) -> str | None:
    if not table_name or not isinstance(key, dict) or table_name not in backend.tables:
        return None  # moto answers a missing table or key itself
    table = backend.tables[table_name]
    return (limits.wire_empty_key_problem(key, table.hash_key_attr, table.range_key_attr)
            or limits.wire_key_problem(key, table.hash_key_attr, table.range_key_attr))


def _item_problem(item: dict, too_large: str) -> str | None:
    for value in item.values():
        problem = limits.wire_problem(value)
        if problem:
            return problem
    if limits.wire_item_size(item) > limits.MAX_ITEM_BYTES:
        return too_large
    return None


def _wire(value) -> dict:
    """A moto DynamoType as DynamoDB's JSON form (without copying its strings)."""
    if value.type == "M":
        return {"M": {k: _wire(v) for k, v in value.value.items()}}
    if value.type == "L":
        return {"L": [_wire(v) for v in value.value]}
    return {value.type: value.value}


def _put_back(table, hash_value, range_value, item) -> None:
    if range_value is not None:
        if item is None:
            table.items[hash_value].pop(range_value, None)
        else:
            table.items[hash_value][range_value] = item
    elif item is None:
        table.items.pop(hash_value, None)
    else:
        table.items[hash_value] = item
