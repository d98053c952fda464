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
  nothing is written.
- TransactWriteItems: a Put is checked up front (ValidationException for the whole call); an
  Update whose result is refused cancels the transaction (TransactionCanceledException with
  a `ValidationError` reason, AWS's message), nothing written.
"""
from __future__ import annotations

import copy
import threading

from engage import dynamodb_limits as limits

_state = threading.local()
_installed = False


class ValidationError(Exception):
    """Raised inside a transaction: moto records `type(error).__name__` as the cancellation code,
    which is DynamoDB's `ValidationError`."""


def install() -> None:
    """Patch moto once per process (its backends are process-global). Call after any other patch
    of StreamShard.add, so a refused update's stream record is never seen."""
    global _installed
    if _installed:
        return
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
        _state.deferred = deferred = []
        try:
            result = original_transact(self, transact_items)
        finally:
            _state.deferred = None
        for shard, old, new in deferred:
            StreamShard.add(shard, old, new)
        return result

    def batch_write_item(self):
        for table_name, requests in self.body.get("RequestItems", {}).items():
            table = self.dynamodb_backend.get_table(table_name)
            for request in requests:
                item = (request.get("PutRequest") or {}).get("Item")
                if item and (problem := put_problem(table, item)):
                    raise MockValidationException(problem)
        return original_batch(self)

    def add(self, old, new):
        deferred = getattr(_state, "deferred", None)
        if deferred is not None:
            deferred.append((self, old, new))
            return None
        return original_add(self, old, new)

    DynamoDBBackend.put_item = put_item
    DynamoDBBackend.update_item = update_item
    DynamoDBBackend.transact_write_items = transact_write_items
    DynamoHandler.batch_write_item = batch_write_item
    StreamShard.add = add
    _installed = True


def put_problem(table, item: dict) -> str | None:
    """AWS's message if DynamoDB would refuse to store `item` (wire form) in `table`, else None."""
    problem = limits.wire_key_problem(item, table.hash_key_attr, table.range_key_attr)
    return problem or _item_problem(item, limits.ITEM_TOO_LARGE)


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
