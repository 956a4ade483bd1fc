"""cvlab: ResNet-18 on CIFAR-100, from the course handout to a measured improvement ladder."""

__version__ = "0.1.0"
