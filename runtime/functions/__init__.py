"""Function instances (processes running the handler, like Lambda execution
environments) and the spare interpreter a cold start takes, the dispatcher
that picks or starts them, the invocation context, the Lambda Runtime API
between runtime and instance, deployed versions (a registry that replicas
share and follow) and the hot reload of local changes (``reload``), and the
function log lines with their bounded store (``logs``). Triggers call ``FunctionHost.invoke``; this package never parses
HTTP routes."""
from runtime.functions.deployments import DeployError, Deployments
from runtime.functions.dispatcher import Dispatcher, Report, Result
from runtime.functions.host import FunctionHost, StagedBundle

__all__ = ["DeployError", "Deployments", "Dispatcher", "FunctionHost", "Report", "Result", "StagedBundle"]
