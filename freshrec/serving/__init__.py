"""The request path, independent of Triton: the pipeline (`pipeline`) and the engines that run
the exported models (`engines`)."""
