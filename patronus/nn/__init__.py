"""nn.Modules of the prototype block and the denoiser's embeddings (no training logic)."""

from patronus.nn.embeddings import (
    PrototypeEmbedding,
    PrototypeTokens,
    TimeEmbedding,
    sinusoidal_table,
)
from patronus.nn.proto_encoder import ProtoEncoder, ReceptiveField, receptive_field
from patronus.nn.prototype_layer import (
    PrototypeLayer,
    PrototypeOutput,
    distance_to_activation,
    prototype_distinct_loss,
)

__all__ = [
    "ProtoEncoder",
    "PrototypeEmbedding",
    "PrototypeLayer",
    "PrototypeOutput",
    "PrototypeTokens",
    "ReceptiveField",
    "TimeEmbedding",
    "distance_to_activation",
    "prototype_distinct_loss",
    "receptive_field",
    "sinusoidal_table",
]
