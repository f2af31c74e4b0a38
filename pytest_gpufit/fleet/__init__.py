"""Plan and watch a fleet of GPU runners."""
