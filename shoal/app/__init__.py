"""What the web app needs that is not Streamlit, one module per concern.

Plain Python (numpy, pandas, Pillow, plotly's JSON encoder) and never Streamlit, so the pages stay
thin and every rule they rely on is tested without a browser:

* :mod:`shoal.app.selection`: selections as drawn or picked on the map, their link tokens, and the
  share link itself.
* :mod:`shoal.app.scatter`: colourings from metadata and the WebGL scatter payload of the map.
* :mod:`shoal.app.tables`: rows of the samples table as shown and exported (ids, captions, CSV).
* :mod:`shoal.app.thumbnails`: image and box-crop thumbnails, cached on disk.
* :mod:`shoal.app.uploads`: browser uploads to disk, then to the importers.
"""
