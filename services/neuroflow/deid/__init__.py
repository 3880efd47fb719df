"""De-identification of DICOM objects before they leave a site (research exports, training sets): the DICOM
PS3.15 Basic Application Level Confidentiality Profile with the Retain Longitudinal Temporal Information With
Full Dates Option. ``profile`` holds the attribute table, ``deidentify`` applies it, ``reidentification`` keeps
the map back to the originals at the site, ``export`` de-identifies a folder (``neuroflow deidentify``)."""
