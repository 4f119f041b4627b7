"""The page's CSS."""

CSS = """
.mas-chat { height: 24vh; overflow-y: auto; border: 1px solid #ddd; padding: 4px; font-size: 13px;
            display: flex; flex-direction: column-reverse; }  /* stays scrolled to the newest line */
.mas-chat .m-user { color: #1f4e9e; } .mas-chat .m-agent { color: #1b7a2e; } .mas-chat .m-info { color: #555; }
.mas-chat .m-warning { color: #b36b00; } .mas-chat .m-error { color: #c00000; font-weight: bold; }
.mas-cases { max-height: 20vh; overflow-y: auto; border: 1px solid #ddd; font-size: 13px; }
.mas-cases .case { padding: 1px 4px; cursor: pointer; } .mas-cases .current { background: #e3ecfa; }
.mas-cases .taken { color: #888; cursor: not-allowed; }
.mas-view { position: absolute; inset: 0; pointer-events: none; }
.mas-view .label { position: absolute; top: 4px; right: 8px; color: #f0f0c0; font: 12px monospace;
                   text-shadow: 0 0 3px #000, 0 0 2px #000; }
.mas-tools { display: flex; flex-wrap: wrap; align-items: center; gap: 6px; padding: 2px 6px; font-size: 13px; }
.mas-tools select { border: 1px solid #bbb; border-radius: 4px; padding: 1px 4px; }
.mas-keys { font-size: 12px; columns: 2; }
.mas-keys kbd { font-family: monospace; font-weight: bold; margin-right: 6px; }
"""
