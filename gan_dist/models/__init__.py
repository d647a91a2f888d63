"""The architectures, as plain nn.Modules (no devices, precision, DDP or logging in here), and `build.py`,
which builds G and D for a model config, an image shape and a class count. Each architecture is declared in
gan_dist/registry/architectures.py; what G and D promise is `base.py`'s GeneratorBase / DiscriminatorBase:

    G(z (B, latent_dim), labels (B,) int64 | None = None) -> images (B, C, H, W) in [-1, 1]
    D(images (B, C, H, W), labels | None) -> logits (B,)  (acgan: (logits (B,), class_logits (B, K)))

How each conv architecture adapts to the image size, and conditioning: docs/design-notes.md ("Models").
"""
