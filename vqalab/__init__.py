"""vqalab: VQA and facial-expression models, data, one training loop, measurement tools and
study notebooks rendered into a weekly report."""

__version__ = "0.1.0"
