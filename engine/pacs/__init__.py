"""The PACS side: the C-STORE receiver, DICOMweb and DIMSE sends, the SR and heatmap capture writers."""
