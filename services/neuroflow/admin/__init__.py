"""`neuroflow admin`: what an operator does to the distributed runtime's work (dead letters, studies, re-runs)."""
