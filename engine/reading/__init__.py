"""Reading count files into AnnData: file formats, raw-count checks, gene names."""
