"""A scratch DynamoDB table with a stream on moto, and its records read back (unit tests of moto patches)."""
from __future__ import annotations

import boto3

REGION = "us-east-1"


def create_stream_table(client, name: str = "t") -> None:
    """Table `name` keyed (pk, sk), streaming NEW_AND_OLD_IMAGES."""
    client.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                              {"AttributeName": "sk", "AttributeType": "S"}],
                        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                                   {"AttributeName": "sk", "KeyType": "RANGE"}],
                        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"})


def stream_records(client, name: str = "t") -> list[dict]:
    """Every record of the table's (single-shard) stream, from the start."""
    arn = client.describe_table(TableName=name)["Table"]["LatestStreamArn"]
    # botocore's account-scoped streams host is not routed by moto (notes/local-cloud-findings.md)
    streams = boto3.client("dynamodbstreams", region_name=REGION,
                           endpoint_url=f"https://streams.dynamodb.{REGION}.amazonaws.com")
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard,
                                          ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    return streams.get_records(ShardIterator=iterator)["Records"]
