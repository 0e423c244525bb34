"""conda-ferry: mirror conda channels across air gaps and publish custom channels."""
