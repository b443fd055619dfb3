"""Heart-disease knowledge outside the model: where the UCI data comes from and how it
is read (sources), synthetic patients (synthetic), the metrics evaluate reports and the
validation criteria that judge them. Imports nothing of the project but the engine's
errors and names."""
