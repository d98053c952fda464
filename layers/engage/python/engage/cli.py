"""`engage` command line: spaces and keys, and the local cloud (`engage dev`, `engage invoke`).

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


def _dev(args: argparse.Namespace) -> int:
    from localcloud.server import main as run_local_cloud

    return run_local_cloud(args.rest)


def _invoke(args: argparse.Namespace) -> int:
    from localcloud.invoke import main as invoke_on_local_cloud

    return invoke_on_local_cloud(args.rest)


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

    dev = commands.add_parser("dev", help="run the whole app locally on the embedded local cloud",
                              add_help=False)
    dev.add_argument("rest", nargs=argparse.REMAINDER)
    dev.set_defaults(func=_dev)

    invoke = commands.add_parser("invoke", help="run one function with an event on the local cloud "
                                 "(engage invoke IngestFunction -e events/ingest_track.json)", add_help=False)
    invoke.add_argument("rest", nargs=argparse.REMAINDER)
    invoke.set_defaults(func=_invoke)

    argv = sys.argv[1:] if argv is None else argv
    # argparse's REMAINDER drops leading --options: these commands parse their own.
    if argv[:1] == ["dev"]:
        return _dev(argparse.Namespace(rest=argv[1:]))
    if argv[:1] == ["invoke"]:
        return _invoke(argparse.Namespace(rest=argv[1:]))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
