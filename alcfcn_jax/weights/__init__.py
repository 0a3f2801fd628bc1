"""weights subpackage."""
