"""Rules that turn a click into a mask change, for any engine: the click-local update (`update`), what a negative
click points at in the image (`region`), and reading a click through boxes the box decoder answers (`boxes`)."""
