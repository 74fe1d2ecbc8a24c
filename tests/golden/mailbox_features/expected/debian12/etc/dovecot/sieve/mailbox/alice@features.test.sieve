require ["fileinto", "mailbox"];
if header :contains "List-Id" "announce" {
  fileinto :create "Lists";
}
