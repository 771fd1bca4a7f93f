"""Triggers: what turns the outside world into invocations — HTTP (API Gateway-style
events), the Lambda Invoke API, S3 events, schedules. They call runtime.functions;
they never run handler code themselves."""
