"""kvmcache: replay KVM guest-fault traces through a model of the MMU caches and TDX DPAMT."""

__version__ = "0.1.0"
