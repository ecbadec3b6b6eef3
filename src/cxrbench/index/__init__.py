"""Stage 2, ``index``: official metadata -> the normalized index (Contract 2). ``schema`` holds the
contract, ``findings`` the vocabulary and label specs, ``splits`` the patient-level splits,
``sources/`` one adapter per dataset release, ``build`` the entry point, ``describe`` the summary."""
