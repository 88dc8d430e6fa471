"""g2d: Gradient-Guided Distillation and balanced multimodal learning."""

__version__ = "0.1.0"
