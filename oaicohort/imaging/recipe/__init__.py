"""What preprocessing does to a read series: the parameters, the MRI recipe and the radiograph recipe."""
