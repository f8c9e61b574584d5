"""Training: fine-tune a causal language model on conversations with transformers' `Trainer`
(settings, the model to start from, batches, checkpoints, devices, augmentation, the loss plot)."""
