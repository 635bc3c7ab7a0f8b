"""The FiftyOne plugin's library side: installing it, and the form helpers its operators share."""
