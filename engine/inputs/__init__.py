"""Inputs: files, folders, ZIPs and uploads as named inputs; paths confined to allowed roots; limits."""
