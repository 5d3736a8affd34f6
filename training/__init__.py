"""medvqa-lite: everything before the Hub (data, image loading, training stages, evaluation, CLI).

The model itself lives in ``modeling_medvqa`` (the remote code that travels with checkpoints).
"""
