"""Fixes for moto costs that grow with the size of a local account, not with our work.

moto's TransactWriteItems backs up every table it touches with `copy.deepcopy(table)`, once
per item: every item of the table and every stream record it ever produced. A transaction
on a table of a few thousand items then costs tens of milliseconds and the process grows by
GBs (seen in bench pipeline_cost and in long `make dev` sessions). Here only the items the
transaction names are backed up; on rollback they are put back and the transaction's stream
records are taken off again, which is what AWS does (a cancelled transaction writes nothing).

moto serves requests on many threads and has no lock of its own: with functions running at the
same time (localcloud/runtime.py), a stream record appended by another write between a transaction's
start and its rollback would be taken off with the transaction's, and a poller could read a cancelled
transaction's records before they are taken off. `STREAM_LOCK` orders them: a transaction holds it
from start to commit or rollback, every stream append takes it (aws.py), and the pollers read a shard
under it, so a stream only ever shows committed records, in order.

moto's Query on a table (not an index) gathers and sorts every item of the table, then keeps the
ones under the queried partition key: a cost that grows with the table (ProfileEventsTable, a backfill's
ProfilesTable) on every query. Here that query reads its partition only; results, order and paging
are moto's own (it sorts the partition by range key itself). Index queries are unchanged.

moto's server also lists its own package folder (listdir + isdir of ~200 entries) on every request to
route it (`list_of_moto_modules`); the list never changes in a running process, so it is computed once.

moto 5.2 writes every DynamoDB answer through its generic, model-driven serializer, which looks up
each of AttributeValue's ten members under several name aliases at every node of every item: about
0.15 s per answer for a profile item with a few hundred nested values, most of the suite's time and
of the local cloud's. The item operations' results are already DynamoDB JSON (moto builds them with
`dynamo_to_dict`), so they are written with `json.dumps` instead: bytes as base64 and datetimes as
epoch seconds (what the serializer does), absent (None) members left out.
tests/unit/test_moto_fixes.py compares both writers on the same answers.

Two more per-request costs are paid once: the list of a response class's method names (moto walks the
class with `inspect.getmembers` on every request) and EventBridge's parse of each target's input paths
(on every event delivered): together about a tenth of the local cloud's busy time under an ingest. And
ReceiveMessage's retention check per message reads the queue's retention period instead of building its
whole attribute dict (whose approximate counts walk every message of the queue) three times.

CloudFormation drops a list element that resolves to `AWS::NoValue`; moto keeps it as None (fixed below).

CloudFormation's CreateStack read a template body with PyYAML's pure-Python loader before trying JSON:
the local cloud sends template.yaml translated to JSON, and that parse was about half of the stack's
creation, paid at every start. A body that is a JSON object is read as JSON (as AWS reads it), any other
goes through moto's own parse.
"""
from __future__ import annotations

import base64
import copy
import functools
import json
import threading
from datetime import datetime

_state = threading.local()
_installed = False
STREAM_LOCK = threading.RLock()


def install() -> None:
    """Patch moto once per process (moto's backends are process-global)."""
    global _installed
    if _installed:
        return
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.table import Table

    original_transact = DynamoDBBackend.transact_write_items
    original_deepcopy = getattr(Table, "__deepcopy__", None)

    def table_deepcopy(self, memo):
        if getattr(_state, "in_transaction", False):
            return self  # moto's whole-table backup; the touched items are saved below instead
        if original_deepcopy is not None:
            return original_deepcopy(self, memo)
        clone = Table.__new__(Table)
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            setattr(clone, key, copy.deepcopy(value, memo))
        return clone

    def transact_write_items(self, transact_items):
        with STREAM_LOCK:
            saved = _touched_items(self, transact_items)
            streams = {id(t): (t.stream_shard, len(t.stream_shard.items))
                       for _, t, _, _, _ in saved if t.stream_shard is not None}
            _state.in_transaction = True
            try:
                return original_transact(self, transact_items)
            except Exception:
                for name, table, hash_key, range_key, item in reversed(saved):
                    self.tables[name] = table
                    _restore(table, hash_key, range_key, item)
                for shard, length in streams.values():
                    del shard.items[length:]
                raise
            finally:
                _state.in_transaction = False

    Table.__deepcopy__ = table_deepcopy
    DynamoDBBackend.transact_write_items = transact_write_items

    original_query, original_all_items = Table.query, Table.all_items

    def all_items(self):
        only = getattr(_state, "partition", None)
        if only is None or only[0] is not self:
            return original_all_items(self)
        bucket = self.items.get(only[1])
        if bucket is None:
            return []
        return list(bucket.values()) if self.range_key_attr else [bucket]

    def query(self, hash_key, range_comparison, range_objs, limit, exclusive_start_key, scan_index_forward,
              projection_expressions, index_name=None, *args, **kwargs):
        if index_name or hash_key is None:
            return original_query(self, hash_key, range_comparison, range_objs, limit, exclusive_start_key,
                                  scan_index_forward, projection_expressions, index_name, *args, **kwargs)
        _state.partition = (self, hash_key)
        try:
            return original_query(self, hash_key, range_comparison, range_objs, limit, exclusive_start_key,
                                  scan_index_forward, projection_expressions, index_name, *args, **kwargs)
        finally:
            _state.partition = None

    Table.all_items = all_items
    Table.query = query

    import moto.backends

    modules = tuple(moto.backends.list_of_moto_modules())
    moto.backends.list_of_moto_modules = lambda: iter(modules)
    _install_fast_dynamodb_answers()
    _install_per_request_caches()
    _install_cfn_no_value_in_lists()
    _installed = True


def _install_cfn_no_value_in_lists() -> None:
    """CloudFormation drops a list element that resolves to `AWS::NoValue` (`!If [cond, x, !Ref AWS::NoValue]`);
    moto keeps it as None, which a table's GlobalSecondaryIndexes cannot take."""
    from moto.cloudformation import parsing

    original = parsing.clean_json

    def clean_json(resource_json, resources_map):
        if isinstance(resource_json, list):
            cleaned = (original(value, resources_map) for value in resource_json)
            return [value for value in cleaned if value is not None]
        return original(resource_json, resources_map)

    parsing.clean_json = clean_json


# The operations whose answers are items (and counts, keys, capacity): plain DynamoDB JSON.
FAST_OPERATIONS = frozenset({"GetItem", "BatchGetItem", "Query", "Scan", "PutItem", "UpdateItem", "DeleteItem",
                             "BatchWriteItem", "TransactGetItems", "TransactWriteItems"})
JSON_CONTENT_TYPE = "application/x-amz-json-1.0"


def _install_per_request_caches() -> None:
    """Two lookups moto repeats on every request whose answers never change in a running process."""
    import jsonpath_ng.ext
    import moto.core.responses

    # The names of a response class's methods (inspect.getmembers over ~100 members, every request).
    moto.core.responses.method_names_from_class = functools.cache(moto.core.responses.method_names_from_class)
    # EventBridge parses each target's input paths on every event it delivers (moto.events.utils imports
    # `parse` from the module at each call); a parsed path is read-only, so one parse per path serves all.
    jsonpath_ng.ext.parse = functools.lru_cache(maxsize=1024)(jsonpath_ng.ext.parse)

    # ReceiveMessage checks each message's retention by building the queue's whole attribute dict three
    # times (its approximate counts walk every message): reading the one attribute gives the same answer.
    from moto.core.utils import unix_time
    from moto.sqs.models import SQSBackend

    def is_message_valid_based_on_retention_period(self, queue_name, message) -> bool:
        retention = int(self.get_queue(queue_name).message_retention_period)
        return retention + message.sent_timestamp / 1000 > unix_time()

    SQSBackend.is_message_valid_based_on_retention_period = is_message_valid_based_on_retention_period

    from moto.cloudformation.models import Stack

    yaml_first = Stack.parse_template

    def parse_template(template: str) -> dict:
        try:
            parsed = json.loads(template)
        except (TypeError, ValueError):
            return yaml_first(template)
        return parsed if isinstance(parsed, dict) else yaml_first(template)

    Stack.parse_template = staticmethod(parse_template)


def _install_fast_dynamodb_answers() -> None:
    from moto.dynamodb.responses import DynamoHandler

    original = DynamoHandler.serialized

    def serialized(self, action_result):
        result = action_result.result
        operation = self._get_action()
        if isinstance(result, dict) and operation in FAST_OPERATIONS:
            headers = {"Content-Type": JSON_CONTENT_TYPE}
            headers.update(self.response_headers)
            members = _output_members(operation)  # moto adds a few keys of its own the wire does not carry
            return 200, headers, dynamodb_json({k: v for k, v in result.items() if k in members})
        return original(self, action_result)

    DynamoHandler.serialized = serialized
    DynamoHandler._engage_original_serialized = original  # tests compare both writers


@functools.cache
def _output_members(operation: str) -> frozenset[str]:
    from moto.core.responses import get_service_model

    return frozenset(get_service_model("dynamodb").operation_model(operation).output_shape.members)


def dynamodb_json(result: dict) -> str:
    """An item operation's answer as the wire's JSON (what moto's serializer writes, much faster)."""
    return json.dumps(_plain(result), separators=(",", ":"))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, datetime):
        return value.timestamp()
    return value


def _touched_items(backend, transact_items) -> list:
    """(table name, table, hash key, range key, copy of the item or None) for each item named."""
    saved = []
    for entry in transact_items:
        _, op = next(iter(entry.items()))
        name = op.get("TableName")
        table = backend.tables.get(name)
        keys = op.get("Key") or op.get("Item")
        if table is None or not keys:
            continue  # moto reports the error itself
        try:
            hash_key, range_key = backend.get_keys_value(table, keys)
            current = table.get_item(hash_key, range_key)
        except Exception:  # noqa: BLE001, S112 - a malformed key: moto rejects the transaction as AWS would
            continue
        saved.append((name, table, hash_key, range_key, copy.deepcopy(current)))
    return saved


def _restore(table, hash_key, range_key, item) -> None:
    if range_key is not None:
        if item is None:
            table.items[hash_key].pop(range_key, None)
        else:
            table.items[hash_key][range_key] = item
    elif item is None:
        table.items.pop(hash_key, None)
    else:
        table.items[hash_key] = item
