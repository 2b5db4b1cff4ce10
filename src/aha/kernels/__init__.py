"""Small C kernels for the CPU, compiled on first use by the system C compiler (`build.py`)."""
