"""What the page does, one file per feature; each class takes the app (MedAgentSegWeb.app.WebApp) and keeps only its
own state. The layout that shows them is in MedAgentSegWeb/ui."""
