"""medvqa-lite data."""
