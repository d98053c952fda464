"""`engage` command line: spaces and keys, and the local cloud (`engage dev`).

It talks to DynamoDB directly through boto3's usual configuration, so it works against
AWS (table names from the stack, or --config-table) and against the local cloud
(AWS_ENDPOINT_URL set).
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def _stack_table(stack: str, logical_id: str) -> str:
    import boto3

    resource = boto3.client("cloudformation").describe_stack_resource(StackName=stack, LogicalResourceId=logical_id)
    return resource["StackResourceDetail"]["PhysicalResourceId"]


def _spaces_create(args: argparse.Namespace) -> int:
    from engage import spaces
    from engage.config import settings
    from engage.errors import EngageError

    table = args.config_table or os.environ.get("CONFIG_TABLE") or _stack_table(args.stack, "ConfigTable")
    os.environ["CONFIG_TABLE"] = table
    settings.cache_clear()
    try:
        created = spaces.create_space(args.space_id, args.name, write_key=args.write_key,
                                      access_token=args.access_token)
    except EngageError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2
    print(json.dumps({"space": created.space_id, "name": created.name, "write_key": created.write_key,
                      "access_token": created.access_token}, indent=2))
    print("These secrets are shown once and stored only as hashes: keep them now.", file=sys.stderr)
    return 0


def openapi_document(template_path: str | None = None) -> str:
    """The OpenAPI document generated from template.yaml's HTTP routes and the handlers' resolvers."""
    import importlib.util
    from pathlib import Path

    from engage.openapi import build
    from localcloud import http_api, template

    path = Path(template_path) if template_path else template.TEMPLATE
    routes = [build.ApiRoute(r.function, r.method, r.path) for r in http_api.routes_from_template(path)]
    resolvers = {}
    for function, code_dir in template.code_dirs(path).items():
        if any(route.function == function for route in routes):
            spec = importlib.util.spec_from_file_location(f"openapi_{function}", Path(code_dir) / "app.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            resolvers[function] = module.app
    return build.to_json(build.build(resolvers, routes))


def _openapi(args: argparse.Namespace) -> int:
    from engage import openapi

    text = openapi_document(args.template)
    if args.check:
        if openapi.DOCUMENT.read_text(encoding="utf-8") != text:
            print(f"{openapi.DOCUMENT} is stale: run `engage openapi` (make openapi)", file=sys.stderr)
            return 1
        return 0
    openapi.DOCUMENT.write_text(text, encoding="utf-8")
    print(f"wrote {openapi.DOCUMENT}", file=sys.stderr)
    return 0


def _dev(args: argparse.Namespace) -> int:
    from localcloud.server import main as run_local_cloud

    return run_local_cloud(args.rest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="engage", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    spaces_parser = commands.add_parser("spaces", help="manage spaces and their credentials")
    spaces_commands = spaces_parser.add_subparsers(dest="spaces_command", required=True)
    create = spaces_commands.add_parser("create", help="create a space and print its secrets once")
    create.add_argument("space_id", help="slug: lowercase letters, digits, - and _")
    create.add_argument("--name", help="display name (defaults to the id)")
    create.add_argument("--stack", default="engage", help="CloudFormation stack to find ConfigTable in")
    create.add_argument("--config-table", help="ConfigTable name (skips the stack lookup)")
    create.add_argument("--write-key", help="use this write key instead of a random one")
    create.add_argument("--access-token", help="use this access token instead of a random one")
    create.set_defaults(func=_spaces_create)

    docs = commands.add_parser("openapi", help="generate the HTTP API's OpenAPI document from the handlers "
                                               "(layers/engage/python/engage/openapi/openapi.json)")
    docs.add_argument("--check", action="store_true", help="fail if the checked-in document is stale")
    docs.add_argument("--template", help="template.yaml to read the routes from")
    docs.set_defaults(func=_openapi)

    dev = commands.add_parser("dev", help="run the whole app locally on the embedded local cloud",
                              add_help=False)
    dev.add_argument("rest", nargs=argparse.REMAINDER)
    dev.set_defaults(func=_dev)

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["dev"]:  # argparse's REMAINDER drops leading --options: the local cloud parses its own
        return _dev(argparse.Namespace(rest=argv[1:]))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
