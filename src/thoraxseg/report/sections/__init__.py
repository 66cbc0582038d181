"""The report's sections, one module per group; :data:`thoraxseg.report.html.SECTIONS` orders them."""
