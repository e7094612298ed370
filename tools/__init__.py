"""Tools beside the guide (make demo, make bench and its peers): not installed, not steps."""
