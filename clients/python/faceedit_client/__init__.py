"""The typed Python client of the faceedit gRPC API (`faceedit.v1`), installable without torch.

    from faceedit_client import FaceEditClient, FaceEditClientError, Step

    with FaceEditClient("127.0.0.1:50051", api_key) as client:
        faces = client.generate([1, 2, 3])

The generated stubs of faceedit.v1 (editor, adaptation, common) are `faceedit_client.v1`.
"""

from faceedit_client.client import (
    ANIMATIONS,
    FORMATS,
    STATES,
    Adaptation,
    AdaptationFailed,
    Attribute,
    EditResult,
    Face,
    FaceEditClient,
    FaceEditClientError,
    Frame,
    GeneratorInfo,
    Image,
    Inversion,
    RetryPolicy,
    Step,
)

__all__ = ["ANIMATIONS", "FORMATS", "STATES", "Adaptation", "AdaptationFailed", "Attribute", "EditResult", "Face",
           "FaceEditClient", "FaceEditClientError", "Frame", "GeneratorInfo", "Image", "Inversion", "RetryPolicy",
           "Step"]
