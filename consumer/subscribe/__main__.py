from consumer.subscribe.commands import main

main()
