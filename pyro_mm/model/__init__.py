"""What describes the data: the multimodal Dirichlet-process mixture, its parts
(distributions, networks, fusion, standardisation, label head, scale floors), the
auxiliary-factor protocol, and the amortised guide on top."""

from .dp_mixture import MultimodalDPMixture
from .guide import MultimodalGuide
from .params import GLOBAL_SITES, MixtureParams

__all__ = ["GLOBAL_SITES", "MixtureParams", "MultimodalDPMixture", "MultimodalGuide"]
