from .executor import GenerationExecutor
from .result import CompletionOutput, GenerationResult, Logprob
from .utils import CppExecutorError, RequestError

__all__ = [
    "CompletionOutput",
    "CppExecutorError",
    "GenerationExecutor",
    "GenerationResult",
    "Logprob",
    "RequestError",
]
