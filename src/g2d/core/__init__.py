"""The method's math: losses, teacher confidence, SMP and gradient scaling; tensors in, tensors out, no I/O."""
