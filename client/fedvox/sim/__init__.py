"""`fedvox simulate`: a whole federation on one machine, through the real server and clients."""
