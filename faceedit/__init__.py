"""faceedit: StyleGAN2 face generation, inversion, editing and adaptation (library, no service code)."""

__version__ = "0.1.0"
