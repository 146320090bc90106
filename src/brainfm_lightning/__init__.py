"""BrainFM-Lightning: pretraining and transfer of modality-conditioned 3D masked autoencoders for brain MRI."""

__version__ = "0.1.0"
