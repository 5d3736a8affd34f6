"""Model card and Hub upload."""
