"""medvqa-lite train."""
