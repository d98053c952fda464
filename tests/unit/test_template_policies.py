"""Each function's role grants the DynamoDB and S3 actions its code makes (moto does not enforce IAM:
a missing grant would fail only on AWS).

NEEDS lists the calls each handler's code paths make (traced through the integration and e2e
tests, with the call sites read), table by table; policy templates are expanded from SAM's own
definitions. A TransactWriteItems needs the action of each of its items (Put -> PutItem ...).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from localcloud import template

samtranslator = pytest.importorskip("samtranslator")

NEEDS: dict[str, dict[str, set[str]]] = {
    "IngestFunction": {"ConfigTable": {"GetItem"}, "EventsTable": {"PutItem", "BatchWriteItem"}},
    "ProfileProcessorFunction": {
        "IdentityTable": {"BatchGetItem", "PutItem"},
        "ProfilesTable": {"BatchGetItem", "PutItem", "UpdateItem"},
        "LinksTable": {"Query", "PutItem", "DeleteItem"},
        "ProfileEventsTable": {"BatchWriteItem"},
        "ConfigTable": {"Query"},
    },
    "ProfileApiFunction": {
        "ConfigTable": {"GetItem"}, "IdentityTable": {"BatchGetItem"}, "ProfilesTable": {"BatchGetItem", "GetItem"},
        "LinksTable": {"Query"}, "MembershipsTable": {"Query"}, "ProfileEventsTable": {"Query"},
    },
    "ManagementApiFunction": {
        "ConfigTable": {"GetItem", "PutItem", "Query", "UpdateItem", "BatchWriteItem"},
        "MembershipsTable": {"GetItem", "Query", "BatchGetItem", "BatchWriteItem", "PutItem"},
        "IdentityTable": {"BatchGetItem"},
        "ProfilesTable": {"GetItem", "BatchGetItem", "Scan"},
        "LinksTable": {"Query"},
        "ProfileEventsTable": {"Query"},
        # manual edit -> runtime.on_members_changed -> evaluate_profile -> due.schedule
        "DueTable": {"PutItem"},
    },
    "AudienceExportFunction": {
        "MembershipsTable": {"Query"}, "ProfilesTable": {"BatchGetItem"}, "ConfigTable": {"UpdateItem"},
    },
    "AudienceEvaluatorFunction": {
        "ConfigTable": {"Query", "UpdateItem"}, "MembershipsTable": {"BatchGetItem", "Query", "PutItem"},
        "ProfilesTable": {"BatchGetItem"}, "DueTable": {"PutItem"}, "LinksTable": {"Query"},
        "ProfileEventsTable": {"Query"},
    },
    "AudienceRouterFunction": {
        "ProfilesTable": {"BatchGetItem"}, "IdempotencyTable": {"BatchGetItem", "BatchWriteItem"},
    },
    "AudienceSweeperFunction": {
        "DueTable": {"GetItem", "PutItem", "DeleteItem", "Query"}, "ProfilesTable": {"GetItem", "BatchGetItem"},
        "ConfigTable": {"Query", "UpdateItem"}, "MembershipsTable": {"Query", "PutItem"}, "LinksTable": {"Query"},
    },
    "AudienceBackfillFunction": {
        "ConfigTable": {"GetItem", "Query", "UpdateItem"}, "ProfilesTable": {"Scan", "UpdateItem"},
        "DueTable": {"PutItem"}, "MembershipsTable": {"Query", "PutItem"}, "LinksTable": {"Query"},
        "ProfileEventsTable": {"Query"},
    },
}
# S3 actions on ExportsBucket objects (CreateMultipartUpload/UploadPart/Complete are s3:PutObject;
# HeadObject and presigned GETs are s3:GetObject).
S3_NEEDS = {
    "ManagementApiFunction": {"s3:GetObject"},
    "AudienceExportFunction": {"s3:PutObject", "s3:AbortMultipartUpload", "s3:DeleteObject"},
}


def _policy_templates() -> dict:
    path = Path(samtranslator.__file__).parent / "policy_templates_data" / "policy_templates.json"
    return json.loads(path.read_text())["Templates"]


def _names(value) -> set[str]:
    """Logical ids a resource expression refers to."""
    text = json.dumps(value)
    return {name for name in template.resources() if f'"{name}"' in text or "${" + name + "}" in text
            or f'"{name}.Arn"' in text}


def _grants(function: str) -> list[tuple[set[str], set[str]]]:
    """(actions, referenced logical ids) of each statement of the function's policies."""
    sam_templates = _policy_templates()
    found: list[tuple[set[str], set[str]]] = []
    for policy in template.resources()[function]["Properties"].get("Policies", []):
        for name, params in policy.items():
            if name == "Statement":
                for statement in params:
                    if statement.get("Effect") == "Allow":
                        actions = statement["Action"]
                        found.append(({actions} if isinstance(actions, str) else set(actions),
                                      _names(statement["Resource"])))
            else:
                for statement in sam_templates[name]["Definition"]["Statement"]:
                    actions = statement["Action"]
                    found.append(({actions} if isinstance(actions, str) else set(actions), _names(params)))
    return found


@pytest.mark.parametrize("function", sorted(NEEDS))
def test_each_function_may_make_the_dynamodb_calls_its_code_makes(function):
    grants = _grants(function)
    missing = [f"dynamodb:{action} on {table}" for table, actions in NEEDS[function].items() for action in actions
               if not any(f"dynamodb:{action}" in acts and table in refs for acts, refs in grants)]
    assert not missing, f"{function} lacks {missing}"


@pytest.mark.parametrize("function", sorted(S3_NEEDS))
def test_export_roles_may_make_their_s3_calls_and_no_others(function):
    granted = set().union(*(acts for acts, refs in _grants(function) if "ExportsBucket" in refs))
    assert S3_NEEDS[function] <= granted
    # nothing beyond what the code calls (ListBucket on the bucket only turns a missing file's 403 into 404)
    assert granted - S3_NEEDS[function] <= {"s3:ListBucket"}
