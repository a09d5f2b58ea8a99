from .executor import GenerationExecutor
from .request import LoRARequest
from .result import CompletionOutput, GenerationResult, Logprob
from .utils import CppExecutorError, RequestError

__all__ = [
    "CompletionOutput",
    "CppExecutorError",
    "GenerationExecutor",
    "GenerationResult",
    "LoRARequest",
    "Logprob",
    "RequestError",
]
