"""The account, region and stack a template runs in locally: the values of
CloudFormation's pseudo parameters and the ARNs built from them. One
definition, used by the template reader and by every event that names them."""
from __future__ import annotations

LOCAL_REGION = "us-east-1"
LOCAL_ACCOUNT_ID = "123456789012"  # the account id SAM puts in every local event
LOCAL_STACK_NAME = "local"  # what `sam local` calls the stack
PARTITION = "aws"
URL_SUFFIX = "amazonaws.com"

PSEUDO_PARAMETERS = {
    "AWS::Region": LOCAL_REGION,
    "AWS::AccountId": LOCAL_ACCOUNT_ID,
    "AWS::StackName": LOCAL_STACK_NAME,
    "AWS::StackId": f"arn:{PARTITION}:cloudformation:{LOCAL_REGION}:{LOCAL_ACCOUNT_ID}:stack/{LOCAL_STACK_NAME}/"
                    "00000000-0000-0000-0000-000000000000",
    "AWS::Partition": PARTITION,
    "AWS::URLSuffix": URL_SUFFIX,
}


def function_arn(name: str) -> str:
    return f"arn:{PARTITION}:lambda:{LOCAL_REGION}:{LOCAL_ACCOUNT_ID}:function:{name}"


def bucket_arn(name: str) -> str:
    return f"arn:{PARTITION}:s3:::{name}"
