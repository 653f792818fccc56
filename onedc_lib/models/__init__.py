"""Neural network modules of OneDC: building blocks, transforms, generator."""
