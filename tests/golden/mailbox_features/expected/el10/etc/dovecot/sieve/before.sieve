require ["fileinto", "mailbox"];
if address :is "from" "alerts@monitoring.features.test" {
  fileinto :create "Alerts";
  stop;
}

