"""Read template.yaml: the one wiring shared by tests, the local cloud and AWS."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that turns CloudFormation short tags (!Ref, !GetAtt, !Sub...) into their long form."""


def _construct(loader: yaml.Loader, tag_suffix: str, node: yaml.Node) -> dict:
    name = "Ref" if tag_suffix == "Ref" else f"Fn::{tag_suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if tag_suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


_CfnLoader.add_multi_constructor("!", _construct)


@lru_cache(maxsize=4)
def load(path: str | Path = TEMPLATE) -> dict:
    with open(path) as handle:
        return yaml.load(handle, Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass


def resources(kind: str | None = None, path: str | Path = TEMPLATE) -> dict[str, dict]:
    items = load(path)["Resources"].items()
    return {name: res for name, res in items if kind is None or res["Type"] == kind}


def global_environment(path: str | Path = TEMPLATE) -> dict[str, Any]:
    return load(path).get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})


def table_create_kwargs(logical_id: str, table_name: str, path: str | Path = TEMPLATE) -> dict:
    """boto3 `create_table` arguments built from the template's own key schema."""
    props = resources(path=path)[logical_id]["Properties"]
    kwargs: dict[str, Any] = {
        "TableName": table_name,
        "AttributeDefinitions": props["AttributeDefinitions"],
        "KeySchema": props["KeySchema"],
        "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
    }
    if "GlobalSecondaryIndexes" in props:
        kwargs["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
    if "StreamSpecification" in props:
        kwargs["StreamSpecification"] = {"StreamEnabled": True, **props["StreamSpecification"]}
    return kwargs
