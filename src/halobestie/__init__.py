"""halobestie: the mitra availability engine of a 1:1 paid chat marketplace."""
