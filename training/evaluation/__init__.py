"""medvqa-lite evaluation."""
